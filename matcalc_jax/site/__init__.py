"""The reference site, in one place: ``pages.py`` writes the generated pages (one per rule
and corpus program, the rules index, the API reference, the transform's figures) from the
catalogue and the committed results; ``rules_page.py`` writes ``docs/rules.md``;
``build.py`` assembles them with ``docs/`` and the README, fetches KaTeX, and runs MkDocs
(``matcalc-jax site``, ``matcalc-jax docs``)."""
