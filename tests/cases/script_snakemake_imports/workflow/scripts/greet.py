from snakemake.shell import shell
from snakemake.logging import logger

from wording import shout

word = shout(snakemake.params.word)
logger.info(f"greeting {snakemake.wildcards.name}")
shell("echo {word} {snakemake.wildcards.name} > {snakemake.output[0]}")
