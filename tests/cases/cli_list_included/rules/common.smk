# Included paths are relative to the including file, not to the working directory.
include: "sub/nested.smk"


rule common:
    output:
        "common.txt"
    shell:
        "echo common > {output}"
