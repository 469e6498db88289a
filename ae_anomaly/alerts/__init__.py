"""Alert delivery: a transactional outbox, a dispatcher that retries, and the channels.

The sink writes a notification row in the transaction that writes an event
(:mod:`ae_anomaly.alerts.store`); :class:`~ae_anomaly.alerts.dispatcher.Dispatcher` sends
pending rows to Alertmanager, a JSON webhook or a Slack-compatible webhook
(:mod:`ae_anomaly.alerts.channels`), after the rules and silences
(:mod:`ae_anomaly.alerts.rules`). See docs/alerting.md.
"""
