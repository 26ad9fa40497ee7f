rule one:
    output:
        "one.txt",
    shell:
        "echo {rule} > {output}"


# Inside a module: the copy is renamed and prefixed like the module's other rules.
use rule one as two with:
    output:
        "two.txt",
