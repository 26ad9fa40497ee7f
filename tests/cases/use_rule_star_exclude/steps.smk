# Each output holds the name of the rule that made it.
rule a:
    output:
        "a.txt",
    shell:
        "echo {rule} > {output}"


rule b:
    output:
        "b.txt",
    shell:
        "echo {rule} > {output}"


rule c:
    output:
        "c.txt",
    shell:
        "echo {rule} > {output}"


rule d:
    output:
        "d.txt",
    shell:
        "echo {rule} > {output}"
