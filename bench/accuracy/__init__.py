"""The accuracy reproduction behind `reproduce-accuracy` (bench/reproduce_accuracy.py, the command
line).

What is trained: `data` (embedded data sets), `image_folders` (user data), `configurations`, the
founding question's deliberately buggy head (`seed_model_*`), `plan` (one invocation's data sets,
seeds, frameworks and model). How: `training` (the loop every framework shares), `interface`
(what the loop needs of a framework), the framework runners (`runner_*`, `pipeline_*`,
`distribution_tf`, `distributed`), `side_by_side` (the frameworks in processes of their own),
`checkpoints`, `identity` and `resume` (checkpoints written whole, and resumed only by their own
run), `preflight` (every check made before training), `framework_output` (framework logs kept out
of the progress bars).
What it means: `records` (typed runs, results and loop state), `verdicts`, `comparison` (against
the committed results), and the documents: `markdown`, `explanations`, `paper`, `seed_30`,
`plot`, written as one set by `result_files`.
"""
