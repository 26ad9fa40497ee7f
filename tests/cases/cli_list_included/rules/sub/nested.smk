rule nested:
    output:
        "nested.txt"
    shell:
        "echo nested > {output}"
