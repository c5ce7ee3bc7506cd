"""The HTTP/2 server session on python-hyper's `h2` (pure Python): the fallback where libnghttp2 is missing."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

from slimserve.serving.http2.session import (
    DATA,
    ENDED,
    REQUEST,
    RESET,
    TERMINATED,
    WINDOW,
    ProtocolFailure,
    SessionSettings,
    StreamClosed,
)

# A peer's headers are validated before anything reads them; ours are not (the server writes only headers it
# made, and outbound validation is a fifth of the cost of sending a call's reply).
_CONFIG = h2.config.H2Configuration(client_side=False, header_encoding=None,
                                    validate_outbound_headers=False, normalize_outbound_headers=False)


class H2Session:
    name = "h2"

    def __init__(self, settings: SessionSettings) -> None:
        self._h2 = h2.connection.H2Connection(_CONFIG)
        self._h2.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: settings.max_concurrent_streams,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: settings.initial_window,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: settings.max_header_list_bytes,
        })
        # h2 applies a changed setting to its HPACK decoder when the peer acknowledges it; an initial value is not
        # a change, so the decoder would keep its own 64 KiB bound: set the one the SETTINGS announce.
        self._h2.decoder.max_header_list_size = settings.max_header_list_bytes
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(settings.connection_window)

    def receive(self, data: bytes) -> list[tuple]:
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as error:
            raise ProtocolFailure(str(error) or type(error).__name__) from error
        out: list[tuple] = []
        for event in events:
            kind = type(event)
            if kind is h2.events.DataReceived:
                # Credit goes back at once: what a connection buffers is bounded by the port, not the window.
                if event.flow_controlled_length:
                    self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                out.append((DATA, event.stream_id, event.data))
            elif kind is h2.events.RequestReceived:
                out.append((REQUEST, event.stream_id, event.headers, event.stream_ended is not None))
            elif kind is h2.events.StreamEnded:
                out.append((ENDED, event.stream_id))
            elif kind is h2.events.StreamReset:
                out.append((RESET, event.stream_id))
            elif kind is h2.events.WindowUpdated or kind is h2.events.RemoteSettingsChanged:
                out.append((WINDOW,))
            elif kind is h2.events.ConnectionTerminated:
                out.append((TERMINATED,))
        return out

    def send_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]], end_stream: bool = False) -> None:
        try:
            self._h2.send_headers(stream_id, headers, end_stream=end_stream)
        except h2.exceptions.StreamClosedError as error:
            raise StreamClosed(stream_id) from error

    def send_data(self, stream_id: int, data: bytes) -> None:
        frame = self._h2.max_outbound_frame_size
        try:
            for start in range(0, len(data), frame):
                self._h2.send_data(stream_id, data[start:start + frame])
        except h2.exceptions.StreamClosedError as error:
            raise StreamClosed(stream_id) from error

    def outbound_room(self, stream_id: int) -> int:
        try:
            return self._h2.local_flow_control_window(stream_id)
        except h2.exceptions.StreamClosedError:
            return 0

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        try:
            self._h2.reset_stream(stream_id, error_code)
        except h2.exceptions.StreamClosedError:
            pass

    def data_to_send(self) -> bytes:
        return self._h2.data_to_send()

    @property
    def last_stream_id(self) -> int:
        return self._h2.highest_inbound_stream_id
