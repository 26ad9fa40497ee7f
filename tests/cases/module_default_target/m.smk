rule first:
    output:
        "first.txt",
    shell:
        "echo {rule} > {output}"


rule second:
    output:
        "second.txt",
    shell:
        "echo {rule} > {output}"
