"""Horizon on 127.0.0.1 for the browser tests, deployed as an operator
deploys it: the ``horizon`` package's ``openstack_dashboard`` with a
``local_settings.py`` of its own (found, as Horizon looks for it, as the
``local.local_settings`` module: here from this deployment's directory,
first on the path), static files collected and compressed offline
(``collectstatic``, ``compress``), served by gunicorn with the static
files beside it (tests/e2e/horizon_wsgi.py); and headless Chromium
driven through Selenium and Debian's chromedriver.

Traps handled here: Horizon keeps sessions in a cache (memcached by
default): one gunicorn worker with a process-local cache holds them;
Chromium at start reaches for Google's hosts, which this machine's closed
network refuses (the background-networking flags); Selenium would fetch
a driver from the internet unless told where Debian's is.
"""

import os
import shutil
import subprocess
import sys
import tempfile

from tests.fixtures.processes import free_port
from tests.fixtures.processes import stop_processes
from tests.fixtures.processes import wait_port
from tests.fixtures.wait import wait_for

VENV_BIN = os.path.dirname(sys.executable)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
CHROMIUM = '/usr/bin/chromium'
CHROMEDRIVER = '/usr/bin/chromedriver'


class Horizon:
    """The dashboard, in front of ``keystone`` (whose catalog names every
    other service)."""

    def __init__(self, base, keystone):
        self.base = base
        self.keystone = keystone
        self.port = free_port()
        self.proc = None

    @property
    def url(self):
        return 'http://127.0.0.1:%d' % self.port

    def env(self):
        return dict(os.environ, PYTHONPATH='%s:%s' % (self.base, ROOT),
                    DJANGO_SETTINGS_MODULE='openstack_dashboard.settings')

    def write_config(self):
        b = self.base
        local = os.path.join(b, 'local')
        os.makedirs(local, exist_ok=True)
        os.makedirs(os.path.join(b, 'log'), exist_ok=True)
        open(os.path.join(local, '__init__.py'), 'w').close()
        with open(os.path.join(local, 'local_settings.py'), 'w') as f:
            f.write(f'''# Horizon's local_settings.py for the end-to-end tests.
DEBUG = False
ALLOWED_HOSTS = ['127.0.0.1', 'localhost']
SECRET_KEY = {os.urandom(24).hex()!r}
OPENSTACK_HOST = '127.0.0.1'
OPENSTACK_KEYSTONE_URL = {self.keystone.url!r}
OPENSTACK_KEYSTONE_DEFAULT_ROLE = 'member'
# One gunicorn worker: sessions in its memory.
CACHES = {{'default': {{
    'BACKEND': 'django.core.cache.backends.locmem.LocMemCache'}}}}
SESSION_ENGINE = 'django.contrib.sessions.backends.cache'
SESSION_TIMEOUT = 3600
STATIC_ROOT = {os.path.join(b, 'static')!r}
COMPRESS_OFFLINE = True
OPENSTACK_CINDER_FEATURES = {{'enable_backup': True}}
OPENSTACK_HYPERVISOR_FEATURES = {{'can_set_mount_point': True}}
# The network service is the stack's Neutron stand-in (no QoS, no
# RBAC, no distributed or HA routers, no floating IPs).
OPENSTACK_NEUTRON_NETWORK = {{
    'enable_quotas': False, 'enable_rbac_policy': False,
    'enable_distributed_router': False, 'enable_ha_router': False,
    'enable_fip_topology_check': False}}
LOGGING = {{
    'version': 1, 'disable_existing_loggers': False,
    'handlers': {{'file': {{
        'class': 'logging.FileHandler',
        'filename': {os.path.join(b, 'log', 'horizon.log')!r},
        'formatter': 'plain'}}}},
    'formatters': {{'plain': {{
        'format': '%(asctime)s %(levelname)s %(name)s %(message)s'}}}},
    'root': {{'handlers': ['file'], 'level': 'INFO'}},
}}
''')

    def _manage(self, *args):
        with open(os.path.join(self.base, 'log', 'manage.log'), 'ab') as log:
            subprocess.run([os.path.join(VENV_BIN, 'django-admin')] +
                           list(args), check=True, env=self.env(),
                           stdout=log, stderr=subprocess.STDOUT, timeout=300)

    def prepare(self):
        """Settings, and the static files collected and compressed (this
        needs no other service: it runs while they start)."""
        self.write_config()
        self._manage('collectstatic', '--noinput', '-v0')
        self._manage('compress', '--force', '-v0')
        return self

    def run(self):
        log = open(os.path.join(self.base, 'log', 'gunicorn.log'), 'ab')
        self.proc = subprocess.Popen(
            [os.path.join(VENV_BIN, 'gunicorn'), '--bind',
             '127.0.0.1:%d' % self.port, '--workers', '1', '--threads', '8',
             '--timeout', '120', '--graceful-timeout', '3',
             '--access-logfile', '-',
             '--no-control-socket',
             'tests.e2e.horizon_wsgi:application'],
            env=self.env(), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=self.base, start_new_session=True)
        wait_port(self.port, self.proc, 'horizon (gunicorn)')
        return self

    def errors(self, n=40):
        """The tail of Horizon's errors, for a failed test's report."""
        out = []
        for name in ('horizon.log', 'gunicorn.log'):
            path = os.path.join(self.base, 'log', name)
            if os.path.exists(path):
                lines = open(path, errors='replace').read().splitlines()
                bad = [ln for ln in lines if 'ERROR' in ln or 'Traceback'
                       in ln or '" 50' in ln]
                out.append('== %s\n%s' % (name, '\n'.join(bad[-n:])))
        return '\n'.join(out)

    def stop(self):
        if self.proc is not None:
            stop_processes([self.proc], 20, group=True)


def chromium(download_dir=None):
    """Headless Chromium under Selenium, through Debian's chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix='ursa-chromium-')
    for flag in ('--headless=new', '--no-sandbox', '--disable-gpu',
                 '--disable-dev-shm-usage', '--disable-quic',
                 '--no-first-run', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync',
                 '--window-size=1400,1000', '--user-data-dir=' + profile):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    driver.ursa_profile = profile
    return driver


def quit_chromium(driver):
    try:
        driver.quit()
    finally:
        shutil.rmtree(driver.ursa_profile, ignore_errors=True)


class Dashboard:
    """What an operator does in Horizon, through a real browser: pages,
    tables (Horizon's ``table#<name>``, rows by ``data-display``), row
    actions, modal forms and the messages they leave.  ``shots`` is where
    :meth:`shot` saves screenshots."""

    def __init__(self, driver, url, shots):
        self.driver = driver
        self.url = url
        self.shots = shots
        os.makedirs(shots, exist_ok=True)

    def find(self, css, within=None, timeout=30):
        """The first visible element matching ``css``, once there is one."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.wait import WebDriverWait
        root = within or self.driver

        def shown(_):
            return next((e for e in root.find_elements(By.CSS_SELECTOR, css)
                         if e.is_displayed()), None)
        return WebDriverWait(self.driver, timeout).until(
            shown, 'no visible %r on %s' % (css, self.driver.current_url))

    def ready(self, timeout=60):
        """The page loaded, with no request of jQuery's in flight."""
        from selenium.webdriver.support.wait import WebDriverWait
        WebDriverWait(self.driver, timeout).until(lambda d: d.execute_script(
            "return document.readyState === 'complete' && "
            "(typeof jQuery === 'undefined' || jQuery.active === 0)"))

    def go(self, path):
        self.driver.get(self.url + path)
        self.ready()

    def login(self, user, password):
        self.driver.delete_all_cookies()
        self.go('/auth/login/')
        self.find('#id_username').send_keys(user)
        self.find('#id_password').send_keys(password)
        self.find('#loginBtn').click()
        self.ready()
        assert '/auth/login' not in self.driver.current_url, (
            'login of %s refused: %s' % (user, self.alerts()))

    def shot(self, name):
        self.driver.save_screenshot(os.path.join(self.shots, name + '.png'))

    def alerts(self):
        """The texts of the messages on the page (Success:, Info:,
        Error: ...), also those fading out."""
        return self.driver.execute_script('''
            return Array.from(document.querySelectorAll(
                'div.messages div.alert')).map(a => (
                    a.querySelector('p') || a).textContent.replace(
                    /\\s+/g, ' ').trim());''')

    def message(self, start, timeout=60):
        """Wait for a message that starts with ``start``; return it.  An
        error message instead fails at once, with its text."""
        seen = []

        def shown():
            seen[:] = self.alerts()
            errors = [m for m in seen if m.startswith('Error')
                      and not start.startswith('Error')]
            assert not errors, 'Horizon says %s' % errors
            return next((m for m in seen if m.startswith(start)), None)
        return wait_for(shown, timeout, lambda: 'a message %r, not %s' % (
            start, seen), interval=0.2)

    def rows(self, table):
        """{data-display: {column header, lower case: text}} of ``table``
        on this page (the row's ``id`` too), also keyed by the row's id
        (names need not be unique)."""
        return self.driver.execute_script('''
            const table = document.querySelector('table#' + arguments[0]);
            const out = {};
            if (!table) return out;
            const heads = Array.from(table.querySelectorAll(
                'thead > tr:last-child > th')).map(
                th => th.innerText.trim().toLowerCase());
            for (const tr of table.querySelectorAll(
                    'tbody > tr[data-object-id]')) {
                const cells = {id: tr.getAttribute('data-object-id')};
                Array.from(tr.children).forEach((td, i) => {
                    if (heads[i]) cells[heads[i]] = td.innerText.trim();
                });
                out[tr.getAttribute('data-display') || cells.id] = cells;
                out[cells.id] = cells;
            }
            return out;''', table)

    def records(self, table):
        """The rows of ``table``, each once."""
        return list({r['id']: r for r in self.rows(table).values()}.values())

    def row(self, table, ref, timeout=30):
        """The row of ``table`` whose name or id is ``ref``."""
        return self.find("table#%s tr[data-display='%s'], table#%s "
                         "tr[data-object-id='%s']" % (table, ref, table, ref),
                         timeout=timeout)

    def wait_row(self, path, table, name, timeout=180, **want):
        """Reload ``path`` until ``table``'s row ``name`` shows ``want``
        (column: text, e.g. status='Available'); return its cells."""
        seen = {}

        def there():
            self.go(path)
            seen.clear()
            seen.update(self.rows(table).get(name) or {})
            bad = seen.get('status', '').lower()
            assert 'error' not in bad or 'error' in want.get(
                'status', '').lower(), '%s %s: %s' % (table, name, seen)
            return dict(seen) if seen and all(
                seen.get(k) == v for k, v in want.items()) else None
        return wait_for(there, timeout, lambda: '%s row %s to show %s, not '
                        '%s' % (table, name, want, seen), interval=1)

    def wait_gone(self, path, table, names, timeout=180):
        """Reload ``path`` until ``table`` lists none of ``names``."""
        left = []

        def gone():
            self.go(path)
            rows = self.rows(table)
            left[:] = [n for n in names if n in rows]
            return not left
        wait_for(gone, timeout, lambda: '%s rows %s to go' % (table, left),
                 interval=1)

    def table_action(self, label, table=None):
        """Click ``label`` among the table's actions (of ``table`` where a
        page has several tables; also one in a modal still loading)."""
        from selenium.webdriver.common.by import By
        scope = "//table[@id='%s']" % table if table else ''
        xpath = (scope + "//div[contains(@class, 'table_actions')]//*["
                 "self::a or self::button][normalize-space()='%s']" % label)
        wait_for(lambda: next((e for e in self.driver.find_elements(
            By.XPATH, xpath) if e.is_displayed()), None), 30,
            'table action %r on %s' % (label, self.driver.current_url),
            interval=0.2).click()

    def row_action(self, table, name, label):
        """Click ``label`` in the row's actions: its button, or the entry
        of its drop-down menu."""
        from selenium.webdriver.common.by import By
        actions = self.row(table, name).find_element(
            By.CSS_SELECTOR, 'td.actions_column')
        xpath = ".//*[self::a or self::button][normalize-space()='%s']" % label
        direct = [e for e in actions.find_elements(By.XPATH, xpath)
                  if e.is_displayed()]
        if not direct:
            actions.find_element(By.CSS_SELECTOR, '.dropdown-toggle').click()
            direct = [actions.find_element(By.XPATH, xpath)]
        direct[0].click()

    def form(self):
        """The open modal form."""
        return self.find('.modal-dialog form')

    def fill(self, form, **fields):
        """Type into ``form``'s fields (by id, without ``id_``)."""
        from selenium.webdriver.common.by import By
        for name, value in fields.items():
            box = form.find_element(By.ID, 'id_' + name)
            box.clear()
            box.send_keys(str(value))

    def choose(self, form, field, label):
        """Pick ``label`` in a field's themed drop-down (Horizon hides the
        <select> behind it)."""
        from selenium.webdriver.common.by import By
        box = form.find_element(
            By.XPATH, ".//*[@for='id_%s']/following-sibling::div" % field)
        box.find_element(By.CSS_SELECTOR, '.dropdown-toggle, button').click()
        box.find_element(
            By.XPATH, ".//ul[contains(@class, 'dropdown-menu')]//a[starts-"
            "with(normalize-space(), '%s')]" % label).click()

    def submit(self, form, label=None):
        from selenium.webdriver.common.by import By
        css = (".btn-primary[value='%s']" % label) if label else '.btn-primary'
        form.find_element(By.CSS_SELECTOR, css).click()

    def select(self, table, refs):
        """Tick the rows ``refs`` (names or ids) of ``table``, for an
        action on them all."""
        from selenium.webdriver.common.by import By
        for ref in refs:
            cell = self.row(table, ref).find_element(
                By.CSS_SELECTOR, 'td.multi_select_column')
            box = cell.find_element(By.CSS_SELECTOR, 'input')
            if not box.is_selected():
                # The themed box hides the input behind its label.
                cell.find_element(By.CSS_SELECTOR, 'label').click()
            assert box.is_selected(), 'row %s of %s not ticked' % (ref, table)

    def confirm(self):
        """Confirm the open 'are you sure' dialog."""
        self.find('.modal-dialog .btn-danger').click()
