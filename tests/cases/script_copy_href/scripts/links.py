href = snakemake.report_href
with open(snakemake.output[0], "w") as out:
    print(href("page.html"), file=out)
    print(href("page.html").url_args(n=4, q="a b").anchor("top"), file=out)
    print(href("sub").child_path("sub/x.html"), file=out)
