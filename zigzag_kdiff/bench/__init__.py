"""The evidence rig behind ``zigzag-kdiff bench`` and ``zigzag-kdiff replicate``: not part of the sampling API.

- :mod:`.common`: ``bench cost`` and what the benchmarks share (:class:`~.common.Method`, ``sample_method``).
- :mod:`.mixture`: the exact Gaussian-mixture denoiser; :mod:`.gmm`: ``bench gmm`` on it.
- :mod:`.shapes_task`: the bundled shapes16 task (prompts, rule checker, tokenizer, model configs);
  :mod:`.shapes`: ``bench shapes`` on the bundled model.
- :mod:`.convergence`: ``bench convergence`` and ``bench shapes-dpmpp`` (the DPM++ 2M rule).
- :mod:`.replicate`: does one benchmark JSON reproduce another within its confidence intervals?
"""
