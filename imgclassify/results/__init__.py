"""Results: the records, rendering probabilities into them, the output formats, the run manifest,
resuming, merging shards, the HTML report."""
