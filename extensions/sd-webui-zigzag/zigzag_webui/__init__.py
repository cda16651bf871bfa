"""The webui side of the Zigzag samplers, importable without a webui (tested in ``tests/test_a1111.py``).

``scripts/zigzag.py`` is the glue that hands the host's objects (``modules.sd_samplers``,
``SamplerData``, ``KDiffusionSampler``, ``shared.opts``, the X/Y/Z grid module) to the modules of this
package, one concern each. All sampling is :mod:`zigzag_kdiff`'s; these modules only turn webui
settings and ``p`` into its arguments, do the host's bookkeeping and register the entries:

* :mod:`.names` the dropdown entries' names and aliases; :mod:`.settings` the "Zigzag sampler" settings,
  their validation and the call count they imply; :mod:`.infotext` infotext entries and notes;
  :mod:`.xyz` the X/Y/Z grid axes; :mod:`.forge` the Forge-family hooks (per-call branch and scale);
  :mod:`.sampling` the sampler function on the host's ``CFGDenoiser``; :mod:`.registry` registration
  in the host's sampler list and the host notes.

Paper symbols: γ₁ the CFG scale of denoising calls (the webui's CFG Scale, or Hires CFG Scale in a
Forge-family hires pass), γ₂ the inversion scale, λ the zigzag steps, T_max the rounds.
"""
