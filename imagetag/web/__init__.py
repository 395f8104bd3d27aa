"""``imagetag web``: the web app over Solr (search, image pages, search by example, status).

The top of the project, beside the CLI: nothing imports it but its command
(``imagetag.commands.web``). :mod:`imagetag.web.queries` builds every Solr query (pure,
escaped), :mod:`imagetag.web.backend` reads Solr, the model store and the archive,
:mod:`imagetag.web.app` is the Flask application, :mod:`imagetag.web.server` serves it.
"""
