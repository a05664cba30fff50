"""``crossmodal prepare`` recipes: a dataset's raw download -> the dataset format
(docs/design.md §3), one command per dataset, reproducibly (datasets/README.md).

Each recipe module exposes ``register(subparsers)``, adding one sub-command per dataset
name it serves, with :func:`crossmodal.prepare.common.add_common_arguments`; shared pieces
(paths, options recorded in the folder, the final count table) are in
:mod:`crossmodal.prepare.common`.
"""

#: Recipe modules, in the order ``crossmodal prepare --help`` lists their datasets.
RECIPE_MODULES = (
    "crossmodal.prepare.scans",
    "crossmodal.prepare.photoface",
    "crossmodal.prepare.celebahq",
)
