"""Voice channels on the control plane: who is in which channel (:mod:`.states`), where
routers go (:mod:`.placement`), TURN credentials (:mod:`.turn_credentials`) and the service
that drives the SFU nodes (:mod:`.service`). docs/voice.md is the contract."""

from .service import ChannelFacts, VoiceService, channel_facts
from .states import ErrorCode, VoiceRefused, VoiceRegistry, VoiceSession

__all__ = [
    "ChannelFacts",
    "ErrorCode",
    "VoiceRefused",
    "VoiceRegistry",
    "VoiceService",
    "VoiceSession",
    "channel_facts",
]
