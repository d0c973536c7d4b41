"""What a first touch of fresh anonymous memory costs on this machine now, in CPU time: a
4 KiB page (huge pages refused for the mapping) in microseconds, and a 2 MiB transparent
huge page (asked for with madvise; where THP is off this is 512 small pages) in
milliseconds. Printed as two numbers for scripts/bench-mqtt.sh."""

import mmap
import time

SIZE = 128 << 20
PAGE = 4096
HUGE = 2 << 20


def touch(advice: int) -> float:
    m = mmap.mmap(-1, SIZE)
    m.madvise(advice)
    t = time.process_time()
    for i in range(0, SIZE, PAGE):
        m[i] = 1
    took = time.process_time() - t
    m.close()
    return took


small = touch(mmap.MADV_NOHUGEPAGE) / (SIZE // PAGE) * 1e6
huge = touch(mmap.MADV_HUGEPAGE) / (SIZE // HUGE) * 1e3
print(f"{small:.2f} {huge:.2f}")
