def label(prefix, sample):
    return f"{prefix}:{sample}"
