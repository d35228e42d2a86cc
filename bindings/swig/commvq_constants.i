/* C# only: the constants of include/commvq/commvq.h as the public class
 * Commvq.Constants (Constants.ERR_CAPACITY, Constants.DTYPE_F16, ...).
 *
 * C# keeps a module's constants in its module class, whose raw calls
 * commvq.i makes internal; this second module holds nothing but the
 * constants, all compile-time values, so only its Constants.cs is compiled
 * (no native code). */
%module Constants

%rename("%(regex:/^COMMVQ_(.*)/\\1/)s") "";
%rename("$ignore", %$isfunction) "";
%rename("$ignore", %$isclass) "";
%rename("$ignore", %$istypedef) "";
/* An expression of the three version constants; those are here. */
%ignore COMMVQ_VERSION_NUMBER;
%pragma(csharp) moduleclassmodifiers="public static class"
%csconst(1);

#define COMMVQ_STATIC_DEFINE
%include "commvq/commvq.h"
