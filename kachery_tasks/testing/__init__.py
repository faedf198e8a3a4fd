"""Test suites shipped with the package, for backends written elsewhere (needs pytest).

* :mod:`.buckets` -- ``BucketContract``, for a :class:`~kachery_tasks.storage.buckets.base.Bucket`;
* :mod:`.executors` -- ``ExecutorContract``, for an :class:`~kachery_tasks.Executor`
  (it submits the tasks of :mod:`.contract_tasks`);
* :mod:`.pubsub` -- ``PubSubContract``, for a pub/sub client.

Subclass one in a test module, name the subclass ``Test...`` and give it the
backend under test; each module's docstring shows how.
"""
