"""Explanations written elsewhere (Neuronpedia, EleutherAI's delphi) brought in, searched with a
ranked full-text index that works offline (SQLite FTS5), and a database's features, activations
and explanations written out in the layout Neuronpedia imports."""
