"""`ibp-check model`: the checks of a whole model. `engine.check_model` runs them and returns an
`engine.ModelReport`; `checks` holds the whole-model checks, `located` the IBP head's layers found
in a model, `traced_models` the model as the checks see it, `supervisor` the process they run in."""
