"""The local-stack manager: Kafka, Postgres, S3Proxy, Airflow and the streaming daemons, all
real programs on 127.0.0.1, installed by the project's own code and run under one supervisord."""
