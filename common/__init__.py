"""Everything the methods share.

TensorFlow reads its C++ log level once, when it is imported; setting the quiet default here
(`common.console`) puts it before any module of this package can import TensorFlow.
"""

from common import console

console.quiet_native_logs()
