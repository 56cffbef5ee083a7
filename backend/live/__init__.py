"""The run's model and SAEs live in the server: probe text a user writes, steer along a feature.

`model` loads them from what the database recorded (once per process) and serialises requests;
`probe` encodes text with every SAE; `steer` adds a feature's decoder direction at its hook.
"""
