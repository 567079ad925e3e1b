"""Run `dag.test()` of one DAG in this (fresh) process and print what happened as one JSON line.

    python dag_runner.py <dag_id> '<conf json>'

Run by tests/integration/airflow/conftest.py::run_dag with a throwaway AIRFLOW_HOME (sqlite
metadata), the DAGs folder of the repo and the crypto_* connections in the environment.
"""
import json
import sys


def main() -> int:
    dag_id, conf = sys.argv[1], json.loads(sys.argv[2])
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    bag = DagBag(dag_folder=f"dags/{dag_id}.py")
    if bag.import_errors:
        print("RESULT" + json.dumps({"import_errors": bag.import_errors}))
        return 1
    dag = bag.dags[dag_id]
    dr = dag.test(run_conf=conf or None)
    with create_session() as session:
        tis = session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id,
                                                 TaskInstance.run_id == dr.run_id).all()
        xcoms = session.query(XComModel).filter(XComModel.dag_id == dag_id, XComModel.run_id == dr.run_id).all()
        out = {
            "run_id": dr.run_id,
            "state": str(dr.state),
            "tasks": {f"{ti.task_id}[{ti.map_index}]" if ti.map_index >= 0 else ti.task_id: str(ti.state)
                      for ti in tis},
            "xcom": {f"{x.task_id}[{x.map_index}].{x.key}" if x.map_index >= 0 else f"{x.task_id}.{x.key}": x.value
                     for x in xcoms},
        }
    print("RESULT" + json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
