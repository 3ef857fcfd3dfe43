"""What each route does, one module per resource (as :mod:`serving.routers`): ids in, the scorer
asked once, ids and reasons out.

Routes parse and authorise; these functions validate against the loaded bundle (categories, tag
values), convert external ids to rows, ask :class:`~serving.scorer.Scorer` and turn rows back into
ids. Errors are :mod:`serving.errors` / :class:`~recsys.errors.InputError` (404 / 422).

* :mod:`~serving.service.picks` — picks for members (pre-ranked lists, live scoring, fallbacks);
* :mod:`~serving.service.similar` — similar products;
* :mod:`~serving.service.audiences` — audiences for a product, their profile and baselines, and
  the options an audience request may name;
* :mod:`~serving.service.products` — finding products for the console;
* :mod:`~serving.service.members` — a member's profile;
* :mod:`~serving.service.events` — live purchases;
* :mod:`~serving.service.common` — the product look-ups and error listings they share.
"""
