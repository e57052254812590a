"""Optional integrations with other training libraries; each is its own module, imported only
when used, so that this package needs none of them:

- ``symmpo.integrations.trl``: ``SymMPOTrainer``, TRL's ``DPOTrainer`` training SymMPO (and
  this library's DPO and mDPO) with symmpo's fused loss (``pip install "symmpo[trl]"``,
  docs/trl.md); its data helpers, which need no TRL, are in ``trl_data``.
"""
