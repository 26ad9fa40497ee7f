rule leaf:
    output:
        "leaf.txt",
    shell:
        "echo {rule} > {output}"
