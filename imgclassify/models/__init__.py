"""Models: the registry, the plan (what will load, without torch), weights, labels, architectures,
and the native nets."""
