"""The built-in encoder fine-tuning methods, registered through entry points like any plugin.

* :mod:`.fd_align` — FD-Align (the default), whole, as in SPEC §1;
* :mod:`.full_ft` — plain full fine-tuning against the class prototypes;
* :mod:`.wise_ft` — WiSE-FT: full fine-tuning, then weight interpolation with the stock encoder;
* :mod:`.lp_ft` — LP-FT: a linear probe first, then fine-tuning with the probe as head;
* :mod:`.lipsum_ft` — Lipsum-FT: keep image–text energies on random texts near the stock model's.

Formulas and sources: ``docs/methods.md``.
"""
