"""A ``predict`` run: the runner, its inputs, shards, sorting into folders, and the engines."""
