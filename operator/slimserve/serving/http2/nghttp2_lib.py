"""libnghttp2's C interface, the part a server session uses, declared for `ctypes`.

Why a binding of our own: PyPI has no maintained one (nghttp2's own Python bindings were a Cython module
built with the library, not published; `pynghttp2` 0.3.2 is an alpha without trailers, which gRPC needs).
The declarations follow nghttp2.h of the 1.x series, whose ABI is stable (the soname has been
libnghttp2.so.14 since 2015). The library is opened with `ctypes.PyDLL`: the GIL stays held, so a call
costs no lock hand-off and callbacks re-enter Python at once; every call is short and never blocks.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

# Frame types and flags (RFC 9113).
DATA, HEADERS, RST_STREAM, SETTINGS, GOAWAY, WINDOW_UPDATE = 0x0, 0x1, 0x3, 0x4, 0x7, 0x8
FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1
# nghttp2_headers_category: a HEADERS frame that opens a request.
HCAT_REQUEST = 0
# nghttp2_data_flag, set by a data source's read callback.
DATA_FLAG_EOF = 0x1
DATA_FLAG_NO_END_STREAM = 0x2
# nghttp2_error codes a callback returns.
ERR_DEFERRED = -508
ERR_TEMPORAL_CALLBACK_FAILURE = -521
# nghttp2_settings_id
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6

_SSIZE = ctypes.c_ssize_t
_VOID = ctypes.c_void_p
# Bytes the library lends for the length of a call: a char pointer, whose slice copies them (several times
# cheaper than ctypes.string_at on an address).
BYTES = ctypes.POINTER(ctypes.c_char)


class FrameHeader(ctypes.Structure):  # nghttp2_frame_hd, the first member of every nghttp2_frame
    _fields_ = [("length", ctypes.c_size_t), ("stream_id", ctypes.c_int32), ("type", ctypes.c_uint8),
                ("flags", ctypes.c_uint8), ("reserved", ctypes.c_uint8)]


class _PrioritySpec(ctypes.Structure):
    _fields_ = [("stream_id", ctypes.c_int32), ("weight", ctypes.c_int32), ("exclusive", ctypes.c_uint8)]


class HeadersFrame(ctypes.Structure):  # nghttp2_headers
    _fields_ = [("hd", FrameHeader), ("padlen", ctypes.c_size_t), ("pri_spec", _PrioritySpec),
                ("nva", _VOID), ("nvlen", ctypes.c_size_t), ("cat", ctypes.c_int)]


class Nv(ctypes.Structure):  # nghttp2_nv; the submit functions copy names and values
    _fields_ = [("name", ctypes.c_char_p), ("value", ctypes.c_char_p), ("namelen", ctypes.c_size_t),
                ("valuelen", ctypes.c_size_t), ("flags", ctypes.c_uint8)]


class SettingsEntry(ctypes.Structure):  # nghttp2_settings_entry
    _fields_ = [("settings_id", ctypes.c_int32), ("value", ctypes.c_uint32)]


class _Info(ctypes.Structure):  # nghttp2_info
    _fields_ = [("age", ctypes.c_int), ("version_num", ctypes.c_int), ("version_str", ctypes.c_char_p),
                ("proto_str", ctypes.c_char_p)]


# Callback types: (session, ...) -> int, user_data last; frames are passed as addresses.
BeginHeadersCallback = ctypes.CFUNCTYPE(ctypes.c_int, _VOID, _VOID, _VOID)
HeaderCallback = ctypes.CFUNCTYPE(ctypes.c_int, _VOID, _VOID, BYTES, ctypes.c_size_t, BYTES, ctypes.c_size_t,
                                  ctypes.c_uint8, _VOID)
FrameRecvCallback = ctypes.CFUNCTYPE(ctypes.c_int, _VOID, _VOID, _VOID)
DataChunkRecvCallback = ctypes.CFUNCTYPE(ctypes.c_int, _VOID, ctypes.c_uint8, ctypes.c_int32, BYTES,
                                         ctypes.c_size_t, _VOID)
StreamCloseCallback = ctypes.CFUNCTYPE(ctypes.c_int, _VOID, ctypes.c_int32, ctypes.c_uint32, _VOID)
ErrorCallback = ctypes.CFUNCTYPE(ctypes.c_int, _VOID, ctypes.c_int, BYTES, ctypes.c_size_t, _VOID)
DataSourceReadCallback = ctypes.CFUNCTYPE(_SSIZE, _VOID, ctypes.c_int32, _VOID, ctypes.c_size_t,
                                          ctypes.POINTER(ctypes.c_uint32), _VOID, _VOID)


class DataProvider(ctypes.Structure):  # nghttp2_data_provider: the source union, then the read callback
    _fields_ = [("source", _VOID), ("read_callback", DataSourceReadCallback)]


_SIGNATURES: dict[str, tuple[type | None, list]] = {
    "nghttp2_version": (ctypes.POINTER(_Info), [ctypes.c_int]),
    "nghttp2_strerror": (ctypes.c_char_p, [ctypes.c_int]),
    "nghttp2_session_callbacks_new": (ctypes.c_int, [ctypes.POINTER(_VOID)]),
    "nghttp2_session_callbacks_del": (None, [_VOID]),
    "nghttp2_session_callbacks_set_on_begin_headers_callback": (None, [_VOID, BeginHeadersCallback]),
    "nghttp2_session_callbacks_set_on_header_callback": (None, [_VOID, HeaderCallback]),
    "nghttp2_session_callbacks_set_on_frame_recv_callback": (None, [_VOID, FrameRecvCallback]),
    "nghttp2_session_callbacks_set_on_data_chunk_recv_callback": (None, [_VOID, DataChunkRecvCallback]),
    "nghttp2_session_callbacks_set_on_stream_close_callback": (None, [_VOID, StreamCloseCallback]),
    "nghttp2_session_callbacks_set_error_callback2": (None, [_VOID, ErrorCallback]),
    "nghttp2_session_server_new": (ctypes.c_int, [ctypes.POINTER(_VOID), _VOID, _VOID]),
    "nghttp2_session_del": (None, [_VOID]),
    "nghttp2_session_mem_recv": (_SSIZE, [_VOID, ctypes.c_char_p, ctypes.c_size_t]),
    "nghttp2_session_mem_send": (_SSIZE, [_VOID, ctypes.POINTER(BYTES)]),
    "nghttp2_session_want_read": (ctypes.c_int, [_VOID]),
    "nghttp2_session_resume_data": (ctypes.c_int, [_VOID, ctypes.c_int32]),
    "nghttp2_session_get_stream_remote_window_size": (ctypes.c_int32, [_VOID, ctypes.c_int32]),
    "nghttp2_session_get_remote_window_size": (ctypes.c_int32, [_VOID]),
    "nghttp2_session_get_last_proc_stream_id": (ctypes.c_int32, [_VOID]),
    "nghttp2_submit_settings": (ctypes.c_int, [_VOID, ctypes.c_uint8, ctypes.POINTER(SettingsEntry),
                                               ctypes.c_size_t]),
    "nghttp2_submit_window_update": (ctypes.c_int, [_VOID, ctypes.c_uint8, ctypes.c_int32, ctypes.c_int32]),
    "nghttp2_submit_response": (ctypes.c_int, [_VOID, ctypes.c_int32, ctypes.POINTER(Nv), ctypes.c_size_t,
                                               ctypes.POINTER(DataProvider)]),
    "nghttp2_submit_trailer": (ctypes.c_int, [_VOID, ctypes.c_int32, ctypes.POINTER(Nv), ctypes.c_size_t]),
    "nghttp2_submit_rst_stream": (ctypes.c_int, [_VOID, ctypes.c_uint8, ctypes.c_int32, ctypes.c_uint32]),
}

# Where to look: the soname (Linux), then what the platform's loader search finds (e.g. Homebrew's dylib).
_NAMES = ("libnghttp2.so.14", "libnghttp2.so")


@functools.cache
def load() -> ctypes.PyDLL | None:
    """The library with its functions declared, or None where it is not installed."""
    candidates = list(_NAMES)
    found = ctypes.util.find_library("nghttp2")
    if found:
        candidates.append(found)
    for name in candidates:
        try:
            lib = ctypes.PyDLL(name)
        except OSError:
            continue
        try:
            for function, (restype, argtypes) in _SIGNATURES.items():
                symbol = getattr(lib, function)
                symbol.restype, symbol.argtypes = restype, argtypes
        except AttributeError:  # older than the calls above need
            continue
        return lib
    return None


def version() -> str | None:
    """The loaded library's version ("1.52.0"), or None where it is not installed."""
    lib = load()
    return None if lib is None else lib.nghttp2_version(0).contents.version_str.decode()


def strerror(code: int) -> str:
    lib = load()
    return f"nghttp2 error {code}" if lib is None else lib.nghttp2_strerror(code).decode()

