"""Evaluation of a trained policy; it sits above ``symmpo.train`` and the loss API never imports it.

- ``preference``: held-out preference accuracies and reward margins (``preference_metrics``),
  and ``evaluate_run``, the trainer's periodic evaluation;
- ``generation``: greedy answers of a LLaVA model (``generate_answers``);
- ``hallucination``: object-word matching, CHAIR (Object HalBench), AMBER's generative metrics
  and the embedded synthetic set's scene check;
- ``readers``: the JSON / JSONL inputs (AMBER's folder, CHAIR's files, the run's logs);
- ``plots``: ``curves.png`` of a run (``plot_curves``);
- ``checkpoint``: a saved run rebuilt (``symmpo.train.build``) and evaluated
  (``evaluate_checkpoint``);
- ``cli``: ``python -m symmpo.evaluate`` (``main``).

Import from the modules (``from symmpo.eval.hallucination import chair_metrics``): the package
itself imports none of them.
"""
