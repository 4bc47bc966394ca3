"""The end-to-end study: sweep, validation-only selection, final test evaluation, report."""
