import gc

gc.disable()  # only the explicit collections below
for gen in (0, 1, 2, 2, 0):
    gc.collect(gen)
