"""Model transforms: pruning, quantization, conversion.

Each transform is a plain function of (model, parameters) returning a new model; none mutates its
input.  The harness composes them according to a trial's configuration.
"""
