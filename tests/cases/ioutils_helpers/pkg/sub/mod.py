from .helper import NAME

print("relative import:", NAME)
