# Function and file names that would act on a terminal printed raw: OSC 52
# (clipboard), clear screen, window title, CR (overwrite a line), BEL, the C1 CSI
# (0x9b), a newline (forge a line) and a bidi override.
import gc
import time

NAMES = ["\x1b]52;c;aGFja2Vk\x07clip", "\x1b[2Jclear", "cr\rforged", "bell\x07ding",
         "csi\x9b31mred", "nl\nforged", "bidi\u202eevil"]
FILE = "/tmp/\x1b[2J\x1b]0;title\x07evil\r.py"
SRC = """
def work(n):
    s = 0
    for i in range(n):
        s += i
    time.sleep(0.002)
    if n == 700:
        gc.collect()
    return s
"""

space = {"time": time, "gc": gc}
exec(compile(SRC, FILE, "exec"), space)
work = space["work"]
funcs = []
for name in NAMES:
    f = type(work)(work.__code__.replace(co_name=name), space)
    funcs.append(f)
for n in range(1, 9):
    for f in funcs:
        f(n * 100)
