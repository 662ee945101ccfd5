"""Horizon's WSGI application with its collected static files served
beside it (WhiteNoise, from ``STATIC_ROOT`` at ``STATIC_URL``), as a
front-end server would serve them in production.

    gunicorn tests.e2e.horizon_wsgi:application
"""

from django.conf import settings
from openstack_dashboard.wsgi import application as dashboard
from whitenoise import WhiteNoise

application = WhiteNoise(dashboard, root=settings.STATIC_ROOT,
                         prefix=settings.STATIC_URL)
