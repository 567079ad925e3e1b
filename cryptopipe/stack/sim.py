"""The bundled exchange simulator as a stack program (`make up SOURCE=sim`)."""
from __future__ import annotations

from cryptopipe.stack.component import Component, StackContext, port_open, program_block
from cryptopipe.stack.paths import SIM_PORT, repo_root


def sim_endpoints(port: int = SIM_PORT) -> dict[str, str]:
    base = f"127.0.0.1:{port}"
    return {"BINANCE_WS_URL": f"ws://{base}/binance-ws", "BINANCE_REST_URL": f"http://{base}/binance",
            "KUCOIN_REST_URL": f"http://{base}/kucoin", "SIM_CONTROL_URL": f"http://{base}/_sim"}


class Simulator(Component):
    name = "sim"
    program = "sim"
    port = SIM_PORT

    def program_section(self, ctx: StackContext) -> str:
        # CRYPTOPIPE_SIM_ARGS (kept in stack.env) sizes the simulated market, e.g. "--symbols 20 --rate 500"
        args = ctx.env.get("CRYPTOPIPE_SIM_ARGS", "")
        # the ground truth stays in the simulator's bounded in-memory ring (no ever-growing files)
        cmd = f"{ctx.python} -m cryptopipe sim --port {SIM_PORT} {args}".rstrip()
        return program_block(self.program, cmd, log=self.log_path(ctx), directory=str(repo_root()),
                             environment={"PYTHONPATH": str(repo_root())}, startsecs=2)

    def healthy(self, ctx: StackContext) -> bool:
        return port_open(SIM_PORT)

    def describe(self, ctx: StackContext) -> dict:
        return {"address": f"http://127.0.0.1:{SIM_PORT}", **sim_endpoints()}
