rule count:
    input:
        "data/{sample}.txt",
    output:
        "results/{sample}.txt",
    run:
        n = len(open(input[0]).read().splitlines())
        with open(output[0], "w") as f:
            f.write(f"{config['label']} {wildcards.sample} {n}\n")


rule total:
    input:
        expand("results/{sample}.txt", sample=["a", "b"]),
    output:
        "results/total.txt",
    script:
        "../scripts/total.py"
