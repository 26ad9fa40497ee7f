# The module's own mistake is reported at its line, then where it was used.
THREADS = config["threads"]


rule align:
    output:
        "aligned.txt",
    shell:
        "touch {output}"
