"""crypto_stream_supervisor — every 5 minutes (CRYPTOPIPE_SUPERVISOR_MINUTES), never two at once:
read the streaming daemons' states from supervisord, the age of the newest tick per exchange and
each consumer group's lag; restart a dead or stuck program; record what it saw in
`supervisor_checks`; fail loudly when a restart does not bring a program back.
Logic: plugins/supervision.py (decisions), plugins/hooks/, plugins/operators/stream_supervisor.py.
"""
from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import Param, dag

from plugins.operators.stream_supervisor import StreamSupervisorOperator
from plugins.schedules import periodic

INTERVAL_MINUTES = int(os.environ.get("CRYPTOPIPE_SUPERVISOR_MINUTES", "5"))


@dag(
    dag_id="crypto_stream_supervisor",
    **periodic(timedelta(minutes=INTERVAL_MINUTES)),
    dagrun_timeout=timedelta(minutes=INTERVAL_MINUTES * 2),
    tags=["cryptopipe", "streaming"],
    doc_md=__doc__,
    params={
        # generous: an exchange outage of a few minutes is the extractor's to ride out (it
        # reconnects with backoff, and the gap is backfilled); a restart is for a hung process
        "stale_tick_seconds": Param(600, type="integer", minimum=10,
                                    description="an extractor whose exchange's newest tick is older (and whose "
                                                "raw topic got nothing since the last check) is stuck"),
        "consumer_stall_seconds": Param(600, type="integer", minimum=60,
                                        description="a consumer with lag whose committed offsets stood still "
                                                    "this long is stuck"),
        "startup_grace_seconds": Param(120, type="integer", minimum=0,
                                       description="a program running for less is never called stuck"),
        "restart_stopped": Param(False, type="boolean",
                                 description="also start programs that were stopped on purpose"),
        "consumer_groups": Param({}, type="object",
                                 description='override consumer groups, e.g. {"load": "loader"}'),
    },
    default_args={"retries": 0},
)
def crypto_stream_supervisor():
    StreamSupervisorOperator(
        task_id="check_and_restart",
        stale_tick_s="{{ params.stale_tick_seconds }}",
        stall_s="{{ params.consumer_stall_seconds }}",
        startup_grace_s="{{ params.startup_grace_seconds }}",
        restart_stopped="{{ params.restart_stopped }}",
        groups="{{ params.consumer_groups | tojson }}",
    )


crypto_stream_supervisor()
