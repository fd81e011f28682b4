# Names CPython cannot encode as UTF-8 (lone surrogates).


def good():
    return 1


def bad():
    return 2


bad.__code__ = bad.__code__.replace(co_name="b\udcffd", co_filename="/tmp/\udcfe.py")
for _ in range(3):
    bad()
    good()
