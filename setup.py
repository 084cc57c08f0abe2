"""Packaging driven by settings.ini (the nbdev 2 convention)."""
from configparser import ConfigParser
import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
c = cfg['DEFAULT']
reqs = c.get('requirements', '').split()
dev_reqs = c.get('dev_requirements', '').split()
extras = {'dev': dev_reqs}
for k in c:
    if k.startswith('extra_') and k.endswith('_requirements'):
        extras[k[len('extra_'):-len('_requirements')]] = c[k].split()
extras['all'] = sorted({r for k, v in extras.items() if k != 'dev' for r in v})
scripts = [s.strip() for s in c.get('console_scripts', '').split('\n') if s.strip()]

setuptools.setup(
    name=c['lib_name'], version=c['version'], description=c['description'],
    author=c['author'], author_email=c['author_email'], license='Apache-2.0',
    url=c['git_url'], packages=setuptools.find_packages(include=[c['lib_path'], c['lib_path'] + '.*']),
    include_package_data=True, package_data={c['lib_path']: ['assets/*', 'assets/**/*']},
    install_requires=reqs, extras_require=extras, python_requires='>=' + c['min_python'],
    entry_points={'console_scripts': scripts, 'nbdev': [f"{c['lib_path']}={c['lib_path']}._modidx:d"]},
    long_description=open('README.md', encoding='utf-8').read() if __import__('os').path.exists('README.md') else '',
    long_description_content_type='text/markdown', zip_safe=False,
)
