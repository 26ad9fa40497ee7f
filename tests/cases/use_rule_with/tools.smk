rule make:
    output:
        "made.txt",
    shell:
        "echo made > {output}"


rule report:
    input:
        "made.txt",
    output:
        "report.txt",
    params:
        mode="slow",
        label="R",
    threads: 1
    shell:
        "echo {params.label} {params.mode} {threads} $(cat {input}) > {output}"
