"""The codec of every hop: one module per record format, each the only place that builds and
reads that format and the only place that holds the limits of its fields.

| hop | module | written by | read by |
| --- | --- | --- | --- |
| raw record (`<ex>_raw_data`): the frame bytes + headers | `raw` | extractors | transformer, archiver |
| pipeline event (`pipeline_events`) | `events` | extractors | loader |
| dead letter (`<ex>_dlq`): the bad bytes + reason headers | `dlq` | transformer, loader | loader (-> `dlq_records`), operators |
| limits shared by every hop (time bounds, header sizes) | `limits` | – | all of the above |

A record is validated once, where it enters a stage; what a decoder cannot accept raises
`BadRecord` with a short machine-readable reason, which the stage turns into a dead letter.
"""
from .errors import BadRecord

__all__ = ["BadRecord"]
