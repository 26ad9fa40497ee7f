# Relative to this file: rules/helpers.smk, which does not exist.
include: "helpers.smk"
