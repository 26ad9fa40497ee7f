rule align:
    output:
        "aligned.txt",
    shell:
        "touch {output}"
