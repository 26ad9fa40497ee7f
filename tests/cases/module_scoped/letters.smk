wildcard_constraints:
    name="a",


rule from_module:
    output:
        "out/{name}.txt",
    shell:
        "echo module > {output}"


ruleorder: second > first


rule first:
    output:
        "pick/{n}.txt",
    shell:
        "echo first > {output}"


rule second:
    output:
        "pick/{n}.txt",
    shell:
        "echo second > {output}"
