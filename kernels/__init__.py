"""symmpo_kernels: Triton kernels of the SymMPO logits path (installed under this name)."""
